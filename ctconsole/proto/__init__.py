"""Python modules generated from proto/ (see ctconsole/protogen.py); do not edit."""
