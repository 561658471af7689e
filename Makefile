# The two set-up commands: `make run` and `make test` (README.md).
.PHONY: run test deps venv lock proto
export PIP_DISABLE_PIP_VERSION_CHECK=1

deps:
	@bash scripts/system-deps.sh

venv: deps
	@bash scripts/venv.sh

run: venv
	@mkdir -p var
	DEBUG=$${DEBUG:-1} .venv/bin/python manage.py migrate --noinput -v0
	DEBUG=$${DEBUG:-1} .venv/bin/python manage.py ensureadmin
	DEBUG=$${DEBUG:-1} .venv/bin/python manage.py workload start --keep --rate 4 --sizes 1:4,2:3,4:2,8:1 --lifetime 60-300 --tenants 3
	DEBUG=$${DEBUG:-1} .venv/bin/honcho start -f Procfile

test: venv
	@bash scripts/test.sh

lock:
	.venv/bin/pip freeze --exclude-editable --exclude gpu-console > constraints.txt
