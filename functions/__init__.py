"""inferpipe's Lambda functions: one package, one handler per Step Functions task."""
