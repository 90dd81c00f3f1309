"""The web dashboard (`ftqueue dashboard`, the `dashboard` extra): pages rendered on the
server that refresh from a JSON API under /api/, both read through `ftqueue.state`.

  server.py   serving it, and running it beside `ftqueue start`
  app.py      routes: pages, API, the cancel action, login
  data.py     what each page shows, as JSON-ready dicts
  auth.py     token, session cookie, CSRF
"""
