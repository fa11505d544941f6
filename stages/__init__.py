"""Pipeline stages: one thin module each. A stage wires library pieces; the library never imports these."""
