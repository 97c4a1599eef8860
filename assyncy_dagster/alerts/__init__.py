"""The e-mails ASSyncy sends, one module per e-mail; `mail.py` makes a rendered e-mail a message
and sends it. Pure logic, no Dagster imports: the epnalert asset, the CLI and the tests all render
through here. Every text is a Jinja template in etc/, none in this package.

- `templates`: loading and rendering a template (sandboxed, autoescaped HTML, strict variables),
  and the error that names the template file and line.
- `tables`: the "simple" table layout of HPC ASSyncy's e-mails.
- `unknown_epn`: the "Unknown ownership of EPNs" alert and digest (HPC ASSyncy's contract).
- `stuck_section`: the digest's stuck-EPN section (the canary's entries and notes).
- `failure`: the repatriation-failure alert.
- `checking`: every template tried on a sample e-mail (`assyncy check-config`).
"""
