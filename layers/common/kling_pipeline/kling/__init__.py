"""Client for Kling's image-generation API: `task` and `errors` are its values (pure), `client` and `auth`
talk to Kling. Nothing is re-exported here, so importing a value never loads the HTTP stack."""
