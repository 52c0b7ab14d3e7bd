"""The data path: reading, change filtering, compression and storage of blocks, and back.

``backup.py`` turns a volume into objects and a manifest; ``restore.py`` turns a manifest
back into bytes on a target; ``fanout.py`` shares their work among threads. None of them
knows about statuses or requests: the runner does.
"""
