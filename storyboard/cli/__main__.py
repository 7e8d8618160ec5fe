"""`python -m storyboard.cli`: the same as the `storyboard` command."""

from . import main

# Guarded: a process started with "spawn" (the PDF's font subsets) imports this module again
# under another name, and must not run the command a second time.
if __name__ == "__main__":
    main()
