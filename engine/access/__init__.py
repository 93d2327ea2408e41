"""Who may act over HTTP: principals, their keys and scopes, checked against each command."""
