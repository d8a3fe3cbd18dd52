"""Device security: the credential store (`store`), secrets sealed at rest (`keys`),
the registration authoriser (`authorizer`) and their wiring to a server (`service`).
"""
