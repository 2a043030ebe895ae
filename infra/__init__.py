"""eventbus infra: settings, topic provisioning, the embedded broker and the command line."""

__all__: list[str] = []
