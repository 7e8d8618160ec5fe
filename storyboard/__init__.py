"""storyboard: a declarative storyboard compiler.

A story file (YAML) goes in; validated specs, compiled render jobs and, later in the pipeline,
rendered panels and composed comic pages come out. This package root stays import-light: the
`validate` and `plan` paths must never pull in torch.
"""

__version__ = "0.1.0"
