"""The JSON payloads of the HTTP API. Images are base64 strings (a ``data:image/...;base64,`` prefix is
accepted); unknown fields are refused so that a misspelt option is an error, not a silent default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr

SUBJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Request):
    images: list[StrictStr] = Field(min_length=1, description="base64 images, aligned face crops")


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    model: str


class VerifyRequest(_Request):
    image_a: StrictStr
    image_b: StrictStr
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="default: the service's")


class VerifyResponse(BaseModel):
    similarity: float
    match: bool
    threshold: float


class IdentifyRequest(_Request):
    image: StrictStr
    top_k: int = Field(5, ge=1)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)


class Match(BaseModel):
    subject_id: str
    similarity: float
    match: bool


class IdentifyResponse(BaseModel):
    matches: list[Match]
    gallery_size: int
    threshold: float


class EnrolRequest(_Request):
    image: StrictStr


class EnrolResponse(BaseModel):
    subject_id: str
    created: bool
    gallery_size: int


class GalleryResponse(BaseModel):
    size: int
    subject_ids: list[str]


class ErrorDetail(BaseModel):
    loc: str
    code: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    state: str
    detail: dict[str, str | int | float | bool | None] = {}
