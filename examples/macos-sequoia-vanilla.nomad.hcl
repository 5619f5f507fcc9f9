# The end-to-end example: a macOS Sequoia VM whose SSH password comes from a
# Nomad variable through a template in the task's secrets directory.
job "macos-sequoia-vanilla" {
  datacenters = ["dc1"]
  type        = "service"

  group "vms" {
    count = 1

    task "vm" {
      driver = "tart"

      template {
        data        = <<EOH
SSH_PASSWORD={{ with nomadVar "nomad/jobs/macos-sequoia-vanilla" }}{{ .ssh_password }}{{ end }}
EOH
        destination = "secrets/secrets.env"
        env         = true
      }

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "${SSH_PASSWORD}"
        show_ui      = false
        disk_size    = 60
      }

      resources {
        cores  = 8
        memory = 10240
      }

      logs {
        max_files     = 3
        max_file_size = 10
      }
    }
  }
}
