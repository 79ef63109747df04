"""kling-pipeline shared package: the job contract, the Kling client and the pipeline's domain logic.

Deployed as the `common` SAM layer; installed into the dev environment from the same directory.
"""
