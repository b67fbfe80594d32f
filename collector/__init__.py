"""The central collector: ingest -> store -> rules -> alerts, with query beside the store."""
