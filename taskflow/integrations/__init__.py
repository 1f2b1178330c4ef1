"""Web framework integrations: the broker's life tied to the app's, and handed to handlers.

* :mod:`taskflow.integrations.fastapi`: a lifespan for FastAPI (or any
  Starlette app) and a ``Depends`` helper (``pip install 'taskflow-aio[fastapi]'``).
* :mod:`taskflow.integrations.aiohttp`: a ``cleanup_ctx`` for aiohttp and a
  typed ``web.AppKey`` (``pip install 'taskflow-aio[aiohttp]'``).

Neither keeps global state: the broker is stored on the app it serves, so
two apps in one process (or two test clients) each hold their own.
"""
