"""kopf handlers, thin: register and delegate. One module per kind; `register()` wires them all."""
