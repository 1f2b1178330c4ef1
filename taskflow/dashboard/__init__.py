"""A web dashboard for a taskflow broker: an ASGI app (Starlette) to mount or run alone.

```python
from fastapi import FastAPI
from taskflow.dashboard import Dashboard

app = FastAPI()
app.mount("/tasks", Dashboard(broker))
```

``taskflow dashboard app:broker --port 8181`` serves it alone. Pages are
rendered on the server (Jinja2) and refreshed in place by htmx, which the
package serves itself: no CDN, no build step. Needs ``taskflow-aio[dashboard]``.
"""

from __future__ import annotations

from taskflow.dashboard._app import Dashboard
from taskflow.dashboard._format import Formatter, show_arguments

__all__ = ["Dashboard", "Formatter", "show_arguments"]
