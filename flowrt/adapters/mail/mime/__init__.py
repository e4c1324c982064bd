"""MIME: mail bytes -> exchange (read), exchange -> mail (compose), S/MIME."""
