"""snapctl: the command-line client of the snapshots service.

It is a top-level package of its own because it is a client, not part of the service: it
talks to the service over HTTP only (httpx), never imports ``api``, ``workers`` or
``shared``, and can be installed and run on any machine that can reach the API.
"""
