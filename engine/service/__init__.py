"""The service layer: the embedded default that keeps a catalog of backups.

``BackupEngine`` (``backups``) is the façade; behind it the catalog (the only module that
holds SQL), the volume registry, the planner, the job runner, the status table, the backup
and restore jobs and the restart rule. It calls the data path (``engine.datapath``) and the
maintenance modules (``engine.gc``, ``engine.verify``) and never the other way round.
"""
