"""inferpipe tooling: the CLI, the local AWS stack and the model packaging tools."""
