"""What `pulumi up` runs for every stack of the project (Pulumi.yaml `main: stacks/`)."""

from stacks import program

program.main()
