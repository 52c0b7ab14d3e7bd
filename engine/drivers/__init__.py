"""Backup drivers that embed the data path in other systems' backup services.

Each driver lives in a module of its own and imports its host system (``cinder.py`` imports
Cinder), so this package imports nothing: ``import engine`` never requires any of them.
Drivers use only the public data-path API (``engine.datapath``) and the repository
(``engine.repository``); their records live in the host system's database, never in the
embedded default's catalog.
"""
