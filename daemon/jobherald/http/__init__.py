"""The daemon's HTTP side: health, Prometheus metrics, the JSON API and the status page.

- ``server``: the aiohttp app in the daemon's own loop, its routes and the token check.
- ``pages``: the HTML pages (Jinja2 templates under ``templates/``) and the progress chart.
"""

from jobherald.errors import ListenError
from jobherald.http.server import HttpServer

__all__ = ["HttpServer", "ListenError"]
