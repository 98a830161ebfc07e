window.__reportErrors=[];window.addEventListener('error',function(e){
window.__reportErrors.push(String(e.message||e));if(document.body){document.body.dataset.errors=
String(window.__reportErrors.length);document.body.dataset.errorText=window.__reportErrors.join(' | ');}});
