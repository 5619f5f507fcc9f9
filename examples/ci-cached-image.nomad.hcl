# A CI build that Nomad places on a Mac which already has its image when one has it
# (affinity), only on Macs with room to spare (constraint), and whose :latest tag is
# checked against the registry before the clone (force_pull). The task ends with the
# build's exit code (see ci-build.nomad.hcl for templates, artifacts and results).
job "ios-ci" {
  datacenters = ["dc1"]
  type        = "batch"

  affinity {
    attribute = "${attr.driver.tart.images}"
    operator  = "set_contains"
    value     = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest"
    weight    = 100
  }

  constraint {
    attribute = "${attr.unique.driver.tart.disk_free_gb}"
    operator  = ">="
    value     = "80"
  }

  group "build" {
    task "vm" {
      driver = "tart"

      template {
        data        = <<EOH
SSH_PASSWORD={{ with nomadVar "nomad/jobs/ios-ci" }}{{ .ssh_password }}{{ end }}
EOH
        destination = "secrets/secrets.env"
        env         = true
      }

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest"
        ssh_user     = "admin"
        ssh_password = "${SSH_PASSWORD}"
        force_pull   = true

        command = "/bin/bash"
        args    = ["-c", "xcodebuild -version && xcrun simctl list runtimes"]
        timeout = "30m"
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
