"""Help layout of `portjournal`: subcommands in the order given, top-level ones in task sections."""

import click

from . import exitcodes

# Sections of `portjournal --help`, in task order: (key for add_command, heading).
SECTIONS = (
    ("simulate", "Simulate"),
    ("build", "Build and flash"),
    ("collect", "Collect"),
    ("journal", "Journal"),
    ("restore", "Restore and view"),
    ("environment", "Environment"),
)
UNGROUPED = "Other"      # shown for commands registered without a section (a test refuses them)


class OrderedGroup(click.Group):
    """A group that lists its subcommands in the order they were added, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class SectionedGroup(OrderedGroup):
    """The top-level group: `--help` lists the subcommands under task headings (`SECTIONS`).

    Register a command with its section: `cli.add_command(cmd, section="simulate")`, or
    `@cli.command(section="environment")`. A section with no commands is not printed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sections: dict[str, str] = {}          # command name -> section key

    def add_command(self, cmd: click.Command, name: str | None = None, section: str | None = None) -> None:
        super().add_command(cmd, name)
        if section is not None:
            keys = [key for key, _ in SECTIONS]
            if section not in keys:
                raise ValueError(f"unknown help section {section!r}: use one of {', '.join(keys)}")
            self.sections[name or cmd.name] = section

    def command(self, *args, section: str | None = None, **kwargs):
        def decorator(f):
            cmd = click.command(*args, **kwargs)(f)
            self.add_command(cmd, section=section)
            return cmd
        return decorator

    def invoke(self, ctx: click.Context):
        """Run the command; Ctrl-C in the middle of one exits with `INTERRUPTED` (130), not 1."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ninterrupted (Ctrl-C)", err=True)
            raise click.exceptions.Exit(exitcodes.INTERRUPTED) from None

    def ungrouped(self) -> list[str]:
        """Names of the commands that belong to no section."""
        return [name for name in self.commands if name not in self.sections]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        shown = [(name, cmd) for name in self.list_commands(ctx)
                 if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if not shown:
            return
        width = max(len(name) for name, _ in shown)       # one column width across the sections
        limit = formatter.width - 6 - width
        for key, heading in (*SECTIONS, (None, UNGROUPED)):
            rows = [(name.ljust(width), cmd.get_short_help_str(limit)) for name, cmd in shown
                    if self.sections.get(name) == key]
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)
