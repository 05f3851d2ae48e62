"""pkiform: a Terraform-style plan/apply engine for the PKI of Kubernetes clusters."""

__version__ = "0.1.0"
