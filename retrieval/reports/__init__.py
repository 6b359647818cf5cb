"""Measurement and reports, apart from the engine: `evaluate` (metrics + contact sheets on a test folder), `eda`
(the course data report), `contact_sheet` / `html` (the sheets' PNG and HTML)."""
