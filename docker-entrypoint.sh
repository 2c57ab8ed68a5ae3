#!/usr/bin/env bash
# Entrypoint of the silvasonic-uploader image (Containerfile). Always `exec`s, so the command
# is the container's main process and gets Podman's SIGTERM itself (the worker turns it into a
# soft shutdown that returns in-flight work to the queue).
#
#   no arguments, or `worker [options]`
#       the Celery worker of the remote named by SILVASONIC_STORAGE_REMOTE_SLUG, which the
#       controller sets for each silvasonic-uploader-<slug> container; refused without it
#   a silvasonic-uploader command (`beat`, `controller`, `db upgrade`, `status`, ...) or option
#       run as `silvasonic-uploader <command> ...`
#   anything else (`silvasonic-uploader ...`, `celery -A tasks flower ...`, `bash`)
#       run as given
set -euo pipefail

# Secrets may be given as files (compose `secrets:`, mounted under /run/secrets) instead of
# values: for each NAME below, NAME_FILE names a file whose content (trailing newlines dropped)
# becomes NAME in the environment of the command. So a value never appears on any command line,
# not even podman's (podman-compose passes `environment:` as `podman create -e NAME=value`).
FILE_VARIABLES=(POSTGRES_PASSWORD SILVASONIC_DATABASE_URL SILVASONIC_REDIS_URL SILVASONIC_ENCRYPTION_KEY FLOWER_BASIC_AUTH)

for name in "${FILE_VARIABLES[@]}"; do
  file_var="${name}_FILE"
  path="${!file_var:-}"
  if [[ -z "$path" ]]; then
    continue
  fi
  if [[ -n "${!name:-}" ]]; then
    echo "silvasonic-uploader: both ${name} and ${file_var} are set; keep one of them." >&2
    exit 64 # EX_USAGE
  fi
  if [[ ! -r "$path" ]]; then
    echo "silvasonic-uploader: ${file_var} names ${path}, which cannot be read (is the secret mounted?)." >&2
    exit 66 # EX_NOINPUT
  fi
  value="$(<"$path")"
  export "${name}=${value}"
  unset "${file_var}" value
done

# the commands of `silvasonic-uploader` (silvasonic_uploader/cli/main.py COMMANDS; a unit test keeps them equal)
COMMANDS=(beat controller db demo parked remotes run secrets status worker)

is_command() {
  local name
  for name in "${COMMANDS[@]}"; do
    if [[ "$1" == "$name" ]]; then
      return 0
    fi
  done
  return 1
}

if [[ $# -eq 0 ]]; then
  set -- worker
fi

if [[ "$1" == "worker" ]]; then
  shift
  for arg in "$@"; do
    if [[ "$arg" == "--remote" || "$arg" == --remote=* ]]; then
      exec silvasonic-uploader worker "$@"
    fi
  done
  slug="${SILVASONIC_STORAGE_REMOTE_SLUG:-}"
  if [[ -z "$slug" ]]; then
    {
      echo "silvasonic-uploader: SILVASONIC_STORAGE_REMOTE_SLUG is not set, so this worker has no remote to upload to."
      echo "The controller sets it for every silvasonic-uploader-<slug> container. To start a worker by hand, pass"
      echo "-e SILVASONIC_STORAGE_REMOTE_SLUG=<slug> (\`silvasonic-uploader remotes list\` shows the slugs), or give"
      echo "the image another command: beat, controller, db upgrade, status."
    } >&2
    exit 64 # EX_USAGE
  fi
  exec silvasonic-uploader worker --remote "$slug" "$@"
fi

if is_command "$1" || [[ "$1" == -* ]]; then
  exec silvasonic-uploader "$@"
fi
exec "$@"
