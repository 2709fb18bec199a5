"""The operator's page (`pipeline ui`): live state of a deployment from its stable interfaces."""
