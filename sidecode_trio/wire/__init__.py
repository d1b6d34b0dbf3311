"""The wire protocol: message classes (frozen attrs) and the one cattrs converter."""
