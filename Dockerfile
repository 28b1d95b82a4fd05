# Stage 1: build the wheel (the artefact the image runs; migrations ship inside it).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: install only the wheel: nothing from the source tree is left to depend on.
FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Bake the default model's weights into the image (needs network at build time).
ARG LOOKALIKE_PULL_MODEL=1
RUN if [ "$LOOKALIKE_PULL_MODEL" = "1" ]; then lookalike models pull; fi
ENV LOOKALIKE_DATA_DIR=/var/lib/lookalike
WORKDIR /var/lib/lookalike
EXPOSE 8000
CMD ["lookalike", "serve", "--host", "0.0.0.0", "--port", "8000"]
