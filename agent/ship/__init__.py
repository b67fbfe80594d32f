"""The ship stage: encode.py makes each deletion's DeletionEvent bytes and --stdout JSON line (stdout.py writes
the lines); shipper.py batches them to the collector over one Ingest stream, with acks, reconnects and the disk
spool (spool.py)."""
