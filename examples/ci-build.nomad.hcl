# A CI job: a fresh macOS VM runs one build script and the task ends with its exit
# code; then the VM is powered off and deleted. The script is rendered by a template,
# the sources are fetched by an artifact block (a tarball with src/configure, src/build
# and src/test), both into the task's local/ directory, and the build leaves its result
# in alloc/data/ (nomad alloc fs, or the next task of the group).
#
#   nomad var put nomad/jobs/ci-build ssh_password=admin
#   nomad job run examples/ci-build.nomad.hcl
#   nomad alloc logs -f <alloc> build           # the build's stdout (-stderr: its stderr)
#   nomad alloc fs <alloc> alloc/data/app.tar.gz
variable "source_url" {
  default = "https://example.com/ci/sources.tar.gz"
}

job "ci-build" {
  datacenters = ["dc1"]
  type        = "batch"

  group "build" {
    restart {
      attempts = 0 # a failed build is reported, not retried
      mode     = "fail"
    }

    task "build" {
      driver       = "tart"
      kill_timeout = "30s"       # StopTask: SIGTERM to the build, then 30s to clean up
      kill_signal  = "SIGTERM"

      artifact {
        source      = var.source_url # unpacked into local/
        destination = "local/"
      }

      template {
        destination = "secrets/ssh.env"
        env         = true
        data        = <<EOH
SSH_PASSWORD={{ with nomadVar "nomad/jobs/ci-build" }}{{ .ssh_password }}{{ end }}
EOH
      }

      template {
        destination = "local/build.sh"
        perms       = "755"
        data        = <<EOH
#!/bin/bash
set -euo pipefail
echo "building $NOMAD_JOB_NAME ($BUILD_FLAVOR) on $(sw_vers -productVersion 2>/dev/null || uname -sr)"
cd "$NOMAD_TASK_DIR/src"
for step in configure build test; do
  echo "==> $step"
  "./$step"
done
tar -czf "$NOMAD_ALLOC_DIR/data/app.tar.gz" dist
echo "result: alloc/data/app.tar.gz"
EOH
      }

      env {
        BUILD_FLAVOR = "release"
      }

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "${SSH_PASSWORD}"

        command  = "/bin/bash"
        args     = ["local/build.sh"] # relative to the shared task directory
        timeout  = "1h"               # then killed and failed, whatever Nomad does
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
