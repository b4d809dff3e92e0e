"""The only hydra-aware code: structured-config schemas and the builders the apps call."""
