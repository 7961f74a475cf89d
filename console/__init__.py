"""keel's review console: the human-in-the-loop web pages served at ``/console``.

Server-rendered (Jinja2) with htmx for live refresh, both shipped in this package: no CDN,
no build step. :func:`console.app.mount` adds it to the API app; ``keel serve`` does.
"""

from console.app import PREFIX, console_app, mount

__all__ = ["PREFIX", "console_app", "mount"]
