"""The cold-start baseline: the smallest FastAPI + Mangum function, one route, no database.

Each KeyFlash function's import time is compared with this one's, measured in the same run.
"""

from fastapi import FastAPI
from mangum import Mangum

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


handler = Mangum(app, lifespan="off")
