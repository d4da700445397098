"""The traceability domain: units, serial ranges and recall scopes. Plain Python, no database."""
