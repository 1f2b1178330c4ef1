"""Web framework integrations: the broker's life tied to the app's, and handed to handlers.

* :mod:`taskflow.integrations.fastapi`: a lifespan for FastAPI (or any
  Starlette app) and a ``Depends`` helper (``pip install 'taskflow-aio[fastapi]'``).
* :mod:`taskflow.integrations.aiohttp`: a ``cleanup_ctx`` for aiohttp and a
  typed ``web.AppKey`` (``pip install 'taskflow-aio[aiohttp]'``).
* :mod:`taskflow.integrations.django`: an installed app with the project's
  broker from settings, ``manage.py taskflow``, ``send_on_commit`` and a
  Tasks backend (``pip install 'taskflow-aio[django]'``).
* :mod:`taskflow.integrations.flask`: the ``Taskflow(app)`` extension and
  ``flask taskflow`` (``pip install 'taskflow-aio[flask]'``).

The async ones keep no global state: the broker is stored on the app it
serves, so two apps in one process (or two test clients) each hold their
own. Django has one broker per project (its settings are global); Flask's
extension holds the broker of the apps it was initialized with.
"""
