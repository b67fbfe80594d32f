"""The ingest stage: agents' streams in, acks out. batch.py validates a batch and builds its rows,
stream.py reads each stream ahead and acks after commit, budget.py bounds what all streams hold,
writer.py groups batches into transactions and commitproc.py runs them in child processes."""
