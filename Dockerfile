FROM python:3.11-slim
WORKDIR /srv/lookalike
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir -e .
# Bake the default model's weights into the image (needs network at build time).
ARG LOOKALIKE_PULL_MODEL=1
RUN if [ "$LOOKALIKE_PULL_MODEL" = "1" ]; then lookalike models pull; fi
ENV LOOKALIKE_DATA_DIR=/var/lib/lookalike
EXPOSE 8000
CMD ["lookalike", "serve", "--host", "0.0.0.0", "--port", "8000"]
