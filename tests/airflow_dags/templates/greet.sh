# A template file (Airflow's template_ext rule): its content is the command template.
echo "greetings for {{ ds }} to {{ params.who }}"
echo "query: {% include 'count.sql' %}"
