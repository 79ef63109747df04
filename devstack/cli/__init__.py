"""klingctl and `make demo`: a person's view of a pipeline (local or deployed), on top of the local stack."""
