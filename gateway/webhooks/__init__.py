"""Signed webhooks (issue 11): the sender (`sender.py`), its SQL (`sql.py`), Standard Webhooks signatures
(`signing.py`); the operations side (pruning, backlog gauges, `smsgw webhooks`) is in `ops_sql.py` and
gateway/admin/webhooks.py."""
