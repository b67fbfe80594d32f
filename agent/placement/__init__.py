"""Where a deleted file lived on the node: its host path and its pod volume (mounts.py and volumes.py are pure;
resolver.py reads the mount tables)."""
