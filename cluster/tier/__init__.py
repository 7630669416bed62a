"""The cold tier: chunks in a cloud bucket (any S3 endpoint), under their content address."""
