"""The node's web server: the UI pages and Airflow 3's REST API (`/api/v2/`), over HTTP(S).

Owns the HTTP side of the client API. `app.py` builds the Starlette application and
serves it with uvicorn on a thread of the node process (main.py starts it when
`http_address` is set); `session.py` authenticates a request (bearer token or session
cookie), authorises it with the one role table (api/auth.REQUIRED_ROLE) and guards
cookie writes against cross-site requests; `api_v2.py` is the JSON API; `pages.py`,
`templates/` and `static/` are the pages.

Like the gRPC servicers, handlers here are thin translators: every rule lives in
api/operations.py and api/cluster.py, and their typed errors become HTTP statuses in
one place (`app.STATUS`).
"""
