from riskloop.cli import app

app(prog_name="riskloop")
