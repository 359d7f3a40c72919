# One image for the WMS services, the migration step and the pilot daemon.
# Built offline: every Python package comes from ./wheels (scripts/wheelhouse makes it where PyPI is reachable,
# and it is carried to an air-gapped site with the source tree). No package index is contacted here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/wms/bin:$PATH \
    WMS_LISTEN_HOST=0.0.0.0 \
    WMS_STORAGE_ROOT=/var/tmp/spd-wms/storage \
    WMS_PILOT_WORKDIR=/var/tmp/spd-wms/pilot

COPY wheels /tmp/wheels
RUN python -m venv /opt/wms \
 && /opt/wms/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir 'spd-wms[server]' \
 && rm -rf /tmp/wheels \
 && useradd --system --uid 10001 --home-dir /var/tmp/spd-wms --no-create-home wms \
 && mkdir -p /var/tmp/spd-wms \
 && chown wms /var/tmp/spd-wms

USER wms
WORKDIR /var/tmp/spd-wms
# The compose file names the program of each container (wms-task-manager, wms-pilot-daemon, ...).
CMD ["wms", "--help"]
