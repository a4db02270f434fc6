# scoregate: gateway image. Build: docker build -t scoregate .
# Run:   docker run -p 8443:8443 -p 8081:8081 scoregate
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
COPY serving ./serving
COPY tls ./tls
COPY loadtests ./loadtests
# The kubernetes extra too: deploy/*.yaml run this image as controller, router and batch runner.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[kubernetes]"

FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/scoregate scoregate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --chown=10001:10001 examples /opt/scoregate/examples
USER 10001:10001
WORKDIR /home/scoregate
ENV SCOREGATE_STATE_DIR=/home/scoregate/.scoregate
EXPOSE 8443 8081
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2).status != 200)"
ENTRYPOINT ["scoregate"]
CMD ["serve", "/opt/scoregate/examples", "--host", "0.0.0.0", "--admin-host", "0.0.0.0"]
