"""The host service: ``safeguard serve`` (FastAPI under uvicorn), API keys, the audit log and server settings.

Install with the ``server`` extra. The web app lives in :mod:`safeguard.server.app` and is imported only when
served, so importing this package needs neither FastAPI nor uvicorn.
"""

__all__ = ["audit", "commands", "keys", "loadgen", "settings"]
